FROM {{busybox}}
RUN printf '[main]\nkey = value\n' > /conf.ini
