from factory_twin.cli import main

main()
