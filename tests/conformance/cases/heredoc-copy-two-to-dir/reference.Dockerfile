FROM {{busybox}}
COPY one.txt two.txt /docs/
