// RealtimeHub JavaScript client: being written (see clients/js/README.md when it lands).
export {};
