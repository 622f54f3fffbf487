"""Scrapy settings for the gpt2ja crawler: polite by default.

Every value here is a default for crawling other people's sites. A crawl of a
local mirror (``127.0.0.1``) may turn the delays off through
:class:`gpt2ja.crawler.runner.CrawlConfig` (``polite=False``); nothing else changes.
"""

from scrapy.settings import default_settings as _scrapy_defaults

from gpt2ja import __version__

BOT_NAME = "gpt2ja"
SPIDER_MODULES = ["gpt2ja.crawler.spiders"]
NEWSPIDER_MODULE = "gpt2ja.crawler.spiders"

# Say who we are; the contact can be set per crawl (CrawlConfig.contact).
USER_AGENT = f"gpt2ja-crawler/{__version__} (Japanese GPT-2 corpus research; polite; honours robots.txt)"

# --- politeness -------------------------------------------------------------
ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS = 8
CONCURRENT_REQUESTS_PER_DOMAIN = 1
DOWNLOAD_DELAY = 1.0  # seconds between requests to one domain, at least
# Never randomised: a random factor would go below 1 s half the time. Scrapy ≥ 2.14 names this
# DOWNLOAD_DELAY_JITTER (and warns about the old name); older ones RANDOMIZE_DOWNLOAD_DELAY.
if hasattr(_scrapy_defaults, "DOWNLOAD_DELAY_JITTER"):
    DOWNLOAD_DELAY_JITTER = 0
else:
    RANDOMIZE_DOWNLOAD_DELAY = False
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 1.0
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 1.0

# --- limits -----------------------------------------------------------------
DOWNLOAD_TIMEOUT = 30
DOWNLOAD_MAXSIZE = 32 * 1024 * 1024  # an Aozora zip is < 1 MB; a web page far less
DOWNLOAD_WARNSIZE = 8 * 1024 * 1024
DEPTH_LIMIT = 4
RETRY_ENABLED = True
RETRY_TIMES = 2
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
# 4xx/5xx responses reach our errbacks through HttpError, where they are counted by status.
HTTPERROR_ALLOWED_CODES: list[int] = []

REDIRECT_MAX_TIMES = 10  # a longer chain is counted as too_many_redirects
DOWNLOADER_MIDDLEWARES = {
    # after RobotsTxtMiddleware (100): applies robots.txt Crawl-delay to the domain's slot
    "gpt2ja.crawler.middlewares.CrawlDelayMiddleware": 110,
    # above RedirectMiddleware (600): a redirect back onto its own chain is a named drop, not a silent one
    "gpt2ja.crawler.middlewares.RedirectLoopMiddleware": 601,
}
EXTENSIONS = {
    "gpt2ja.crawler.extensions.ProgressLine": 500,
    # raw responses as WARC files (when GPT2JA_WARC); CrawlManifest publishes its last file, then lists them all
    "gpt2ja.crawler.extensions.WarcArchive": 505,
    "gpt2ja.crawler.extensions.CrawlManifest": 510,
}
ITEM_PIPELINES = {
    # The order of the stages an item goes through, in one place.
    "gpt2ja.crawler.pipelines.ValidatePipeline": 100,
    "gpt2ja.crawler.pipelines.AliasPipeline": 150,
    "gpt2ja.crawler.pipelines.DedupPipeline": 200,
    "gpt2ja.crawler.pipelines.ShardWriterPipeline": 900,
}

LOG_LEVEL = "INFO"
LOG_FORMATTER = "gpt2ja.crawler.logformatter.OneLineDrops"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_FINGERPRINTER_IMPLEMENTATION = "2.7"
FEED_EXPORT_ENCODING = "utf-8"
# Scheduler queues on disk when JOBDIR is set (resumable crawls); FIFO keeps the
# crawl breadth-first so that a page limit reaches many authors, not one.
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"
