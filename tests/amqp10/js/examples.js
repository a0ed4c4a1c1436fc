// rhea's simple_send.js and simple_recv.js examples, as their users run them: no credentials
// (SASL ANONYMOUS), a plain address ('examples' by default).
// usage: node examples.js PORT ADDRESS COUNT; prints one JSON line.
'use strict';
const rhea = require('rhea');

const [port, address, countArg] = process.argv.slice(2);
const count = parseInt(countArg, 10);
const result = { sent: 0, confirmed: 0, received: [], errors: [] };
const container = rhea.create_container();

container.on('sendable', (ctx) => {
  while (ctx.sender.sendable() && result.sent < count) {
    ctx.sender.send({ message_id: result.sent, body: { sequence: result.sent } });
    result.sent++;
  }
});
container.on('accepted', (ctx) => {
  if (++result.confirmed === count) {
    ctx.connection.open_receiver(address);
  }
});
container.on('message', (ctx) => {
  result.received.push(ctx.message.body.sequence);
  if (result.received.length === count) ctx.connection.close();
});
container.on('error', (ctx) => result.errors.push(String(ctx.error || ctx)));
container.on('disconnected', (ctx) => {
  if (ctx.error) result.errors.push(String(ctx.error));
});
container.on('connection_close', () => {
  console.log(JSON.stringify(result));
});
const conn = container.connect({ port: parseInt(port, 10), host: '127.0.0.1', reconnect: false });
conn.open_sender(address);
setTimeout(() => { result.errors.push('timeout'); console.log(JSON.stringify(result)); process.exit(1); }, 20000).unref();
