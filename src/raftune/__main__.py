from raftune.cli import main

raise SystemExit(main())
