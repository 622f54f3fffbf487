from gpt2ja.cli import main

main()
