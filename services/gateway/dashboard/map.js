// The city drawn from the platform's own data (served areas, technicians' last reported
// locations, bookings waiting or under way) as SVG: no tiles, no map service, no network.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 800, HEIGHT = 460, PAD = 16;

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function rings(area) {
  if (!area || !area.coordinates) return [];
  return area.type === "MultiPolygon" ? area.coordinates.flat() : area.coordinates;
}

export function drawMap(areas, technicians, bookings) {
  const points = [];
  for (const a of areas) for (const ring of rings(a.area)) for (const [lon, lat] of ring) points.push([lon, lat]);
  for (const t of technicians) points.push([t.location.lon, t.location.lat]);
  for (const b of bookings) points.push([b.location.lon, b.location.lat]);
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img" });
  const busy = technicians.filter((t) => t.booking_id).length;
  const summary = `Map: ${areas.length} served areas, ${technicians.length} technicians on shift ` +
    `(${busy} on a visit), ${bookings.length} bookings waiting or under way`;
  svg.setAttribute("aria-label", summary);
  svg.append(el("title", {}, summary));
  if (!points.length) {
    svg.append(el("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" }, "Nothing to show yet"));
    return svg;
  }
  const lons = points.map((p) => p[0]), lats = points.map((p) => p[1]);
  const [minLon, maxLon, minLat, maxLat] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  // Equirectangular, with longitude shrunk by the latitude's cosine so a city keeps its shape.
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-4), spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((WIDTH - 2 * PAD) / spanX, (HEIGHT - 2 * PAD) / spanY);
  const x = (lon) => PAD + (lon - minLon) * k * scale;
  const y = (lat) => HEIGHT - PAD - (lat - minLat) * scale;

  for (const a of areas) {
    const d = rings(a.area).map((ring) => "M" + ring.map(([lon, lat]) => `${x(lon).toFixed(1)},${y(lat).toFixed(1)}`).join("L") + "Z").join("");
    const path = el("path", { d, class: "area" });
    path.append(el("title", {}, `Served area ${a.name}`));
    svg.append(path);
    const first = rings(a.area)[0]?.[0];
    if (first) svg.append(el("text", { x: x(first[0]) + 4, y: y(first[1]) - 4, class: "area-label" }, a.name));
  }
  for (const b of bookings) {
    const cx = x(b.location.lon), cy = y(b.location.lat);
    const mark = el("rect", { x: cx - 4, y: cy - 4, width: 8, height: 8, class: "booking", "data-booking": b.booking_id });
    mark.append(el("title", {}, `Booking ${b.booking_id}: ${b.status.replaceAll("_", " ")}`));
    svg.append(mark);
  }
  for (const t of technicians) {
    const dot = el("circle", {
      cx: x(t.location.lon), cy: y(t.location.lat), r: 6,
      class: t.booking_id ? "tech busy" : "tech", "data-technician": t.technician.technician_id,
    });
    dot.append(el("title", {}, `${t.technician.name} (badge ${t.technician.badge_number})` +
      (t.booking_id ? `: ${t.stage.replaceAll("_", " ")}, booking ${t.booking_id}` : ": free")));
    svg.append(dot);
  }
  return svg;
}
