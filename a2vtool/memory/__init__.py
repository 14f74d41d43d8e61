"""Memory probes, growth analysis and reports (memcheck)."""
