# The gateway image assembled offline by tests/docker/build-gateway-image.sh: rootfs.tar holds the
# host-built binary, the shared libraries it links, a minimal /etc and the CA bundle. Keep the
# runtime settings below in step with the root Dockerfile's final stage.
FROM scratch
ADD rootfs.tar /
ENV PORTCULLIS_AUDIT_DIR=/var/lib/portcullis/audit \
    PORTCULLIS_STATE_DIR=/var/lib/portcullis/state \
    PORTCULLIS_POLICY=/etc/portcullis/policy.toml
USER 65532:65532
WORKDIR /var/lib/portcullis
EXPOSE 8811
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/portcullis", "health"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--policy", "/etc/portcullis/policy.toml"]
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="A security-hardened MCP gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
