# The agent's container of the locked-down devcontainer kit: Node, git and the Claude Code CLI,
# run as the non-root user `node`. No sudo (removed if the base has it), no setuid helpers the
# user could use; compose.yaml drops every capability and sets no-new-privileges.
# Claude Code's managed configuration names only the gateway (exclusive control) and allows only
# its URL; it is root-owned and read-only to `node`. Regenerate it with
#   portcullis client-config claude --managed --policy policy/policy.toml \
#     --base-url https://portcullis:8811 --out-dir .
ARG NODE_IMAGE=node:20-bookworm-slim
FROM ${NODE_IMAGE}
ARG CLAUDE_CODE_VERSION=latest
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && (apt-get purge -y --auto-remove sudo || true) \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && npm cache clean --force \
 && (find / -xdev -perm /6000 -type f -exec chmod a-s {} + || true) \
 && install -d -m 0755 /workspace /etc/claude-code
COPY managed-mcp.json managed-settings.json /etc/claude-code/
RUN chmod 0644 /etc/claude-code/managed-mcp.json /etc/claude-code/managed-settings.json
USER node
WORKDIR /workspace
CMD ["sleep", "infinity"]
