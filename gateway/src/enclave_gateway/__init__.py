"""enclave.llm audit gateway."""
__version__ = "0.1.0"
