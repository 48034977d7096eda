from arena_kd.cli import main

main()
