from acl_compose.cli import main

main()
