from specexp.run import main

main()
