/** Raw HTTP/2 frames, for tests that speak to the CSI socket below gRPC. */

/** The client connection preface. */
export const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** One HTTP/2 frame; `length` may lie about the payload's size. */
export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Uint8Array,
  length = payload.length,
): Uint8Array {
  const header = new Uint8Array(9);
  header.set([(length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff, type, flags]);
  new DataView(header.buffer).setUint32(5, stream);
  return concat(header, payload);
}

/** The parts, one after another. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** HPACK literal header fields without indexing or Huffman coding (RFC 7541 6.2.2). */
export function headerBlock(headers: [string, string][]): Uint8Array {
  const encoder = new TextEncoder();
  const parts: Uint8Array[] = [];
  for (const [name, value] of headers) {
    const n = encoder.encode(name);
    const v = encoder.encode(value);
    parts.push(new Uint8Array([0x00, n.length]), n, new Uint8Array([v.length]), v);
  }
  return concat(...parts);
}

/** An empty SETTINGS frame. */
export const SETTINGS = frame(4, 0, 0, new Uint8Array());
/** The header block of a gRPC call to Identity/Probe. */
export const PROBE_HEADERS = headerBlock([
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/csi.v1.Identity/Probe"],
  [":authority", "localhost"],
  ["content-type", "application/grpc"],
  ["te", "trailers"],
]);
