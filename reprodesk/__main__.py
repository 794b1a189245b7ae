from reprodesk.cli import main

main()
