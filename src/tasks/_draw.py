"""The pictures tasks log to TensorBoard, drawn with Pillow (in every stack, torch 1.7's included; matplotlib is
not): a confusion matrix with class names, axes and counts; examples with their true and predicted labels;
predicted vs true with axes, ticks and the identity line; segmentation masks laid over their images. Each
function returns a CHW float tensor in [0, 1], as TensorBoard's add_image takes it."""
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (110, 110, 110), (225, 225, 225)
# distinct colours for classes (Sasha Trubetskoy's list of 20), then repeated
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


def font(size=12):
    """Pillow's own font: scalable where Pillow >= 10.1 has FreeType, else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _size(draw, text, f):
    box = draw.textbbox((0, 0), text, font=f)
    return box[2] - box[0], box[3] - box[1]


def _vertical(text, f, fill=BLACK):
    """text turned 90 degrees counter-clockwise (it reads upwards), on a transparent image."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    w, h = _size(probe, text, f)
    img = Image.new("RGBA", (w + 2, h + 4), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((1, 0), text, font=f, fill=fill)
    return img.rotate(90, expand=True)


def to_tensor(img):
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def short(name, limit=12):
    name = str(name)
    return name if len(name) <= limit else name[:limit - 2] + ".."


def names_of(classes, k):
    return [str(c) for c in classes] if classes and len(classes) == k else [str(i) for i in range(k)]


def _mix(color, share):
    """White blended towards color by share (0..1)."""
    return tuple(int(round(255 + (c - 255) * share)) for c in color)


MAX_DRAWN = 40  # classes in the confusion picture: its size stays bounded whatever the class count


def confusion(matrix, names):
    """Rows: true class, columns: predicted; each cell shaded by its share of the row (green on the diagonal, red
    off it) and labelled with its count. Of more than MAX_DRAWN classes, the MAX_DRAWN with the most samples (in
    their order), said in the title."""
    counts = matrix.long().cpu()
    title = "predicted"
    if counts.shape[0] > MAX_DRAWN:
        keep = counts.sum(1).argsort(descending=True)[:MAX_DRAWN].sort().values
        title = "predicted (the %d of %d classes with the most samples)" % (MAX_DRAWN, counts.shape[0])
        counts, names = counts[keep][:, keep], [names[i] for i in keep.tolist()]
    k = counts.shape[0]
    share = counts.double() / counts.double().sum(1, keepdim=True).clamp(min=1)
    cell = max(8, min(44, 560 // max(k, 1)))
    f, small = font(12), font(max(8, min(12, cell // 3)))
    labels = [short(n) for n in names] if cell >= 10 else [""] * k
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_size(probe, s, f)[0] for s in labels] + [0]) + 8
    title_h = _size(probe, title, f)[1] + 10
    left, top = title_h + label_w, title_h + label_w
    img = Image.new("RGB", (max(left + k * cell + 10, _size(probe, title, f)[0] + 8), top + k * cell + 10), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((max(2, left + (k * cell - _size(draw, title, f)[0]) // 2), 2), title, font=f, fill=BLACK)
    true_title = _vertical("true", f)
    img.paste(true_title, (2, top + (k * cell - true_title.size[1]) // 2), true_title)
    for i in range(k):
        w, h = _size(draw, labels[i], f)
        draw.text((left - w - 4, top + i * cell + (cell - h) // 2), labels[i], font=f, fill=BLACK)
        col = _vertical(labels[i], f)
        img.paste(col, (left + i * cell + (cell - col.size[0]) // 2, top - col.size[1] - 4), col)
        for j in range(k):
            s = float(share[i, j])
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=_mix((0, 140, 60) if i == j else (200, 30, 30), s), outline=LIGHT)
            n = int(counts[i, j])
            if n and cell >= 16:
                text = str(n) if n < 10000 else "%dk" % (n // 1000)
                w, h = _size(draw, text, small)
                if w < cell - 2:
                    draw.text((box[0] + (cell - w) // 2, box[1] + (cell - h) // 2 - 1), text, font=small,
                              fill=WHITE if s > 0.55 else BLACK)
    return to_tensor(img)


def _picture(chw, size):
    """One input as an RGB picture of about size x size: grey or RGB (other channel counts: their mean), scaled
    to its own range."""
    x = chw.detach().float().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.shape[0] not in (1, 3):
        x = x.mean(0, keepdim=True)
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
    arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
    scale = max(1, size // max(img.size))
    return img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)


def examples(inputs, captions, size=96):
    """Inputs (N, C, H, W) side by side, each with its caption lines below ((line, colour), ...)."""
    f = font(12)
    pictures = [_picture(x, size) for x in inputs]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _size(probe, "Ag", f)[1] + 4
    width = max([p.size[0] for p in pictures] + [max(_size(probe, t, f)[0] for lines in captions for t, _ in lines)])
    height = max(p.size[1] for p in pictures) + line_h * max(len(c) for c in captions) + 6
    img = Image.new("RGB", (len(pictures) * (width + 8) + 8, height + 8), WHITE)
    draw = ImageDraw.Draw(img)
    for i, (picture, lines) in enumerate(zip(pictures, captions)):
        x = 8 + i * (width + 8)
        img.paste(picture, (x + (width - picture.size[0]) // 2, 8))
        y = 8 + picture.size[1] + 4
        for text, color in lines:
            draw.text((x, y), text, font=f, fill=color)
            y += line_h
    return to_tensor(img)


def _ticks(lo, hi, n=5):
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def pred_vs_true(counts, lo, hi):
    """A BINS x BINS histogram of (true, predicted) pairs over [lo, hi] in both as a scatter: a dot per occupied
    cell, darker for more pairs; axes with ticks in the target's units, and the identity line."""
    counts = counts.double().cpu()
    bins = counts.shape[0]
    f = font(12)
    plot, left, bottom, top, right = 360, 64, 44, 12, 16
    img = Image.new("RGB", (left + plot + right, top + plot + bottom), WHITE)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = left, top, left + plot, top + plot
    draw.rectangle((x0, y0, x1, y1), outline=GREY)
    for value in _ticks(lo, hi):
        t = (value - lo) / (hi - lo) if hi > lo else 0.0
        label = "%.3g" % value
        w, h = _size(draw, label, f)
        px, py = x0 + t * plot, y1 - t * plot
        draw.line((px, y1, px, y1 + 4), fill=GREY)
        draw.text((px - w / 2, y1 + 6), label, font=f, fill=BLACK)
        draw.line((x0 - 4, py, x0, py), fill=GREY)
        draw.text((x0 - w - 8, py - h / 2 - 1), label, font=f, fill=BLACK)
    w, h = _size(draw, "true", f)
    draw.text((x0 + (plot - w) / 2, y1 + 24), "true", font=f, fill=BLACK)
    title = _vertical("predicted", f)
    img.paste(title, (2, y0 + (plot - title.size[1]) // 2), title)
    draw.line((x0, y1, x1, y0), fill=(0, 150, 70), width=2)  # the identity: predicted = true
    peak = float(counts.max()) or 1.0
    step = plot / bins
    radius = max(2.0, step * 0.45)
    for i in range(bins):  # i: true (x), j: predicted (y, up)
        for j in range(bins):
            n = float(counts[i, j])
            if n:
                share = 0.25 + 0.75 * (n / peak) ** 0.5
                cx, cy = x0 + (i + 0.5) * step, y1 - (j + 0.5) * step
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=_mix((20, 60, 200), share))
    return to_tensor(img)


def overlays(inputs, targets, preds, names, size=128):
    """Per example: the input, then the true and the predicted masks laid over it (class 0, the background of most
    data, left uncoloured); a colour key of the classes."""
    f = font(12)
    k = len(names)
    rows = []
    for x, t, p in zip(inputs, targets, preds):
        base = _picture(x, size)
        row = [base]
        for mask in (t, p):
            classes = mask.long().cpu().numpy().clip(0, k - 1)
            colours = np.array([PALETTE[c % len(PALETTE)] for c in range(k)], dtype=np.uint8)
            layer = Image.fromarray(colours[classes]).resize(base.size, Image.NEAREST)
            shown = Image.fromarray(((classes > 0) * 255).astype(np.uint8)).resize(base.size, Image.NEAREST)
            row.append(Image.composite(Image.blend(base, layer, 0.55), base, shown))  # class 0: the input
        rows.append(row)
    w, h = rows[0][0].size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head = _size(probe, "predicted", f)[1] + 8
    key_w = max(_size(probe, short(n), f)[0] for n in names) + 28
    height = max(head + len(rows) * (h + 6) + 6, head + min(k, 40) * 16 + 6)
    img = Image.new("RGB", (3 * (w + 6) + 10 + key_w, height), WHITE)
    draw = ImageDraw.Draw(img)
    for c, title in enumerate(("input", "true", "predicted")):
        draw.text((6 + c * (w + 6), 2), title, font=f, fill=BLACK)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            img.paste(picture, (6 + c * (w + 6), head + r * (h + 6)))
    x = 3 * (w + 6) + 10
    for c, name in enumerate(names[:40]):
        y = head + c * 16
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=PALETTE[c % len(PALETTE)] if c else WHITE, outline=GREY)
        draw.text((x + 18, y), short(name), font=f, fill=BLACK)
    return to_tensor(img)
