FROM {{busybox}}
COPY a.txt b.txt /e/
COPY dir/one /e/dir/
