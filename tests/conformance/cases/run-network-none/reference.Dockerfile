FROM {{busybox}}
RUN echo offline > /offline
