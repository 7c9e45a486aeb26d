from blindinfer.cli import main

main()
