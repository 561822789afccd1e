FROM {{busybox}}
COPY greeting /etc/greeting
