FROM {{busybox}}
COPY --chmod=0755 hello /usr/local/bin/hello
