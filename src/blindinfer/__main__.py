from blindinfer._cli import main

main()
