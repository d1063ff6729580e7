from hp2p.cli import main

main()
