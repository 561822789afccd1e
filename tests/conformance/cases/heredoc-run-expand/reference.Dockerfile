FROM {{busybox}}
ENV NAME=env-value
RUN echo "name=$NAME" > /expanded && echo 'name=$NAME' > /raw
