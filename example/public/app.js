'use strict';
// The chat page. Which worker serves us and over which transport are shown at the top: with a
// sticky cluster, the page, /health and every Socket.IO request from this browser hit one worker.
(() => {
  const $ = (id) => document.getElementById(id);
  const pollingOnly = new URLSearchParams(location.search).get('transport') === 'polling';

  // Long-polling sends many separate HTTP requests per session, so it only works if they all
  // reach the same worker; forcing it makes the cluster's stickiness visible.
  const socket = io(pollingOnly ? { transports: ['polling'] } : {});
  let me = null; // { name, room } once joined

  $('transport-toggle').textContent = pollingOnly ? 'Allow WebSocket' : 'Polling only';
  $('transport-toggle').href = pollingOnly ? location.pathname : '?transport=polling';
  $('name').value = localStorage.getItem('chat-name') || '';

  const describe = (w) => `pid ${w.pid}, slot ${w.slot}`;

  fetch('/health')
    .then((res) => res.json())
    .then((w) => {
      $('http-worker').textContent = describe(w);
    })
    .catch(() => {
      $('http-worker').textContent = 'unavailable';
    });

  function whoami() {
    socket.emit('whoami', (w) => {
      $('io-worker').textContent = describe(w);
      $('transport').textContent = w.transport;
    });
  }

  function add(className, parts) {
    const list = $('messages');
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    const item = document.createElement('li');
    item.className = className;
    for (const [cls, text] of parts) {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = text; // never innerHTML: names and messages come from other people
      item.append(span);
    }
    list.append(item);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  const time = (at) => new Date(at).toLocaleTimeString();

  function join(name, room) {
    socket.emit('join', { name, room }, (res) => {
      if (res.error) {
        $('join-status').textContent = res.error;
        return;
      }
      me = { name: res.name, room: res.room };
      localStorage.setItem('chat-name', res.name);
      $('join-status').textContent = '';
      $('member').textContent = `${res.name} in #${res.room}`;
      $('room').value = res.room;
      $('text').disabled = false;
      $('send-button').disabled = false;
      $('text').placeholder = `Message #${res.room} as ${res.name}`;
      $('text').focus();
    });
  }

  socket.on('connect', () => {
    whoami();
    // A reconnect (e.g. the worker was restarted) starts a new session without our room.
    if (me) join(me.name, me.room);
  });
  socket.on('disconnect', () => {
    $('io-worker').textContent = 'disconnected, retrying…';
    $('transport').textContent = '…';
  });
  // The engine (and so the transport) is replaced on every reconnection.
  socket.io.on('open', () => socket.io.engine.on('upgrade', whoami));

  socket.on('chat', (m) => {
    add('chat', [
      ['from', `${m.from}: `],
      ['text', m.text],
      ['meta', `${time(m.at)} · via slot ${m.worker.slot}`],
    ]);
  });
  socket.on('system', (m) =>
    add('system', [
      ['text', m.text],
      ['meta', time(m.at)],
    ]),
  );

  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    join($('name').value.trim(), $('room').value.trim() || 'lobby');
  });

  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('text').value.trim();
    if (!text || !me) return;
    socket.emit('chat', { text }, (res) => {
      if (res.error) add('system', [['text', res.error]]);
      else $('text').value = '';
    });
  });
})();
