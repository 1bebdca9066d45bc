from specexp.experiment.run import main

main()
