"""`python -m a2vtool` entry point."""

from a2vtool.cli import main

if __name__ == "__main__":
    main()
