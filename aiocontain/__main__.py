from aiocontain.cli import entry

entry()
