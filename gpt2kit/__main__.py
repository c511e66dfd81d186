from gpt2kit.cli import main

raise SystemExit(main())
