# Our MCP fixture server, statically linked, alone in an empty image: nothing else to exploit,
# nothing to pull. Built offline by tests/docker/build-images.sh.
FROM scratch
COPY portcullis-fixture-server /portcullis-fixture-server
USER 65534:65534
ENTRYPOINT ["/portcullis-fixture-server"]
