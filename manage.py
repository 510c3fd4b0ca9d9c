#!/usr/bin/env python
"""Django's command-line utility, with bad configuration reported in one line."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btcloan.settings")
    from btcloan.startup import fail_fast

    with fail_fast():
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
