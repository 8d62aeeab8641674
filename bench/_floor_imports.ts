/** The start-up floor's second module: what serving needs loaded, then exit (start_floor.ts). */
import "@grpc/grpc-js";
import "node:http2";
