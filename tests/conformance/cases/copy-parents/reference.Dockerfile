FROM {{busybox}}
COPY dir/sub/two /p/dir/sub/
COPY a.txt /p/
