from safeseek.cli import main

main()
