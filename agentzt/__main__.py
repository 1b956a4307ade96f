from agentzt.cli import main

main()
