FROM {{busybox}}
COPY version /version
COPY literal /literal
