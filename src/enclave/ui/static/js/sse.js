// Read a text/event-stream from a fetch Response body as it arrives.
// Yields each event's parsed JSON data; stops at "data: [DONE]". Events are
// separated by a blank line; an event's data lines are joined with "\n".

export async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let boundary;
      while ((boundary = nextBoundary(buffer)) !== null) {
        const [end, skip] = boundary;
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + skip);
        const data = eventData(event);
        if (data === null) continue;
        if (data === "[DONE]") return;
        yield parse(data);
      }
    }
    buffer += decoder.decode();
    const data = eventData(buffer);
    if (data !== null && data !== "[DONE]") yield parse(data);
  } finally {
    reader.releaseLock();
  }
}

function nextBoundary(buffer) {
  const match = /\r?\n\r?\n/.exec(buffer);
  return match ? [match.index, match[0].length] : null;
}

/** The data of one event, or null when it has none (comments, keep-alives). */
export function eventData(event) {
  const lines = [];
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith("data:")) lines.push(line.slice(5).replace(/^ /, ""));
  }
  return lines.length ? lines.join("\n") : null;
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return { error: { message: "The server sent an unreadable event." } };
  }
}
