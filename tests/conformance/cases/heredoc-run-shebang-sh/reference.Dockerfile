FROM {{busybox}}
WORKDIR /w
RUN --mount=type=bind,source=heredoc/SCRIPT,target=/dev/pipes/SCRIPT /dev/pipes/SCRIPT
