FROM {{busybox}}
RUN echo tabbed > /chomp
