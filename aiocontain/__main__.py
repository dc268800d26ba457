from aiocontain.command import main

main()
