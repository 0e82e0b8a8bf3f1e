"""Submit a job to a running app over its HTTP API, follow it, download the video.

    python launch.py --demo &                      # or the real app; add --auth USER:PASS to require a login
    python examples/api_client.py assets/chelsea_landscape.jpg "The cat turns its head" --out result.mp4
"""

import argparse
import json

import httpx

parser = argparse.ArgumentParser()
parser.add_argument("image")
parser.add_argument("prompt")
parser.add_argument("--url", default="http://127.0.0.1:7860/api/v1")
parser.add_argument("--login", default=None, help="USER:PASS when the app runs with --auth")
parser.add_argument("--out", default="result.mp4")
args = parser.parse_args()

auth = tuple(args.login.split(":", 1)) if args.login else None
settings = {"prompt": args.prompt, "seconds": 2, "steps": 8, "resolution": 128, "seed": 7}
with httpx.Client(base_url=args.url, auth=auth, timeout=None) as client:
    with open(args.image, "rb") as image:
        job = client.post("/jobs", files={"image": image}, data={"settings": json.dumps(settings)})
    job.raise_for_status()
    job_id = job.json()["id"]
    print("submitted", job_id)
    with client.stream("GET", f"/jobs/{job_id}/events") as events:  # server-sent events until the job ends
        for line in events.iter_lines():
            if line.startswith("data: "):
                status = json.loads(line[len("data: "):])
                print(status["state"], status["stage"])
    if status["state"] != "finished":
        raise SystemExit(f"job {status['state']}: {status['error']} {status['hint'] or ''}")
    video = client.get(f"/jobs/{job_id}/video")
    video.raise_for_status()
    with open(args.out, "wb") as out:
        out.write(video.content)
    print("saved", args.out)
