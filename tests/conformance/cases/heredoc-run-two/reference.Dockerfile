FROM {{busybox}}
RUN echo alpha > /a.txt && echo beta > /b.txt
