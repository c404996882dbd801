"""python -m marketcache"""

from marketcache.cli.app import main

raise SystemExit(main())
