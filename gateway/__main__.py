import sys

from gateway.service.cli import main

sys.exit(main())
