FROM {{busybox}}
RUN --mount=type=bind,source=heredoc/EOF,target=/dev/pipes/EOF /dev/pipes/EOF
