// The TypeScript SDK client (@modelcontextprotocol/sdk, from .peers) calls tools through the
// gateway and reports what arrived, one JSON line per call, for tests/python/test_big_messages.py.
//
//   node big_answers.mjs SDK_DIR BASE_URL TRANSPORT TOOL:MIB [TOOL:MIB ...]
//
// TRANSPORT: `sse` (Streamable HTTP, answers as SSE), `json` (Streamable HTTP with
// `Accept: application/json` only, so answers come as JSON bodies) or `legacy` (HTTP+SSE, /sse).
// Each line: {"tool", "mib", "bytes", "sha256", "expected", "error"}: `sha256` is computed here
// over the payload that arrived, `expected` is what the server put in structuredContent.

import { createHash } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [sdkDir, base, transport, ...calls] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(sdkDir, "dist/esm", rel)).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { SSEClientTransport } = await load("client/sse.js");

// Only loopback: this client exists for tests on one machine.
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(base)) {
  throw new Error(`refusing a non-loopback gateway address: ${base}`);
}

/** fetch that asks for JSON only, so that the gateway answers POSTs with JSON bodies. */
const jsonOnly = (url, init = {}) => {
  const headers = new Headers(init.headers);
  if ((init.method ?? "GET") === "POST") headers.set("accept", "application/json");
  return fetch(url, { ...init, headers });
};

const make = {
  sse: () => new StreamableHTTPClientTransport(new URL(`${base}/mcp`)),
  json: () => new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { fetch: jsonOnly }),
  legacy: () => new SSEClientTransport(new URL(`${base}/sse`)),
}[transport];
if (!make) throw new Error(`unknown transport ${transport}`);

const client = new Client({ name: "big-answers-ts", version: "1" });
await client.connect(make());
for (const call of calls) {
  const [tool, mib] = call.split(":");
  const line = { tool, mib: Number(mib) };
  try {
    const result = await client.callTool(
      { name: tool, arguments: { mib: Number(mib) } },
      undefined,
      { timeout: 120_000 },
    );
    const item = result.content?.[0] ?? {};
    const data = item.type === "image" ? item.data : item.text;
    if (result.isError) line.error = String(data);
    line.bytes = data?.length ?? 0;
    line.sha256 = createHash("sha256").update(data ?? "").digest("hex");
    line.expected = result.structuredContent?.sha256;
  } catch (e) {
    line.error = String(e?.message ?? e);
  }
  process.stdout.write(JSON.stringify(line) + "\n");
}
await client.close();
