#!/bin/sh
echo "coverage is not available in the offline MemoBuild test workspace" >&2
exit 1
