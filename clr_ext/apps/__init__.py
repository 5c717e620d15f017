"""The applications built on the library: the command line, the digits demo and the
CIFAR-10 reproduction, their models and data."""
