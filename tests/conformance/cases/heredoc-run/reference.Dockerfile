FROM {{busybox}}
RUN set -e; echo first > /heredoc; echo second >> /heredoc
