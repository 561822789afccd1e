FROM {{busybox}}
COPY a.txt /linked/
COPY dir /linked-dir/
