"""The transcription worker: yt-dlp or a bucket object in, faster-whisper subtitles out."""
